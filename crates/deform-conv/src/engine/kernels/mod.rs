//! Row kernels (descriptors, gather, dot products, scatter) and their run-time dispatch.
//!
//! Each kernel body is written once, `#[inline(always)]` and generic over the accumulation type,
//! over plain slices (one bounds check per channel run, none per element): the portable table.
//! Thin `#[target_feature]` wrappers compile it for AVX2+FMA. On top, for f32, each instruction
//! set overrides only what it implements explicitly: AVX2 every row kernel (`avx2_sample`,
//! `avx2_f32`) and the point core's one-pass rows of 8, 16 and 32 channels; AVX-512, over the
//! AVX2 table, the row descriptors (`avx512_sample`), the panel GEMM's zmm tile and the point
//! core's one-pass rows of 16 and 32 channels (`avx512_f32`). The point core's one-pass rows of
//! the portable table ([`PointKernels`]) run on the scalar table only (compiled for AVX2 they
//! measured slower than the row kernels). One table
//! per (element type, instruction set), built once per process ([`table`]). The instruction set
//! is chosen once, on first use, from CPU feature detection, overridable with
//! `DEFORM_CONV_ISA=scalar|avx2|avx512`, and each call can also force one ([`Isa`] in
//! [`crate::op::Backend::EngineIsa`]).
//!
//! Reductions accumulate in `LANE` independent partial sums combined in a fixed order, and no
//! DCNv2 row kernel relies on fused multiply-add, so every instruction set gives bitwise the same
//! result. The forward's GEMM ([`panel_gemm`]) is the other way round: it fuses every
//! multiply-add on every instruction set (`f32::mul_add`), one chain per element in a fixed order,
//! and so it too returns the same bits on each; so does the point core's forward, each sample
//! `fma(w3, s3, fma(w2, s2, fma(w1, s1, w0*s0)))` (its vector ports are its limit: BENCHMARKS.md).

use super::sample::{RowArgs, RowSamples};
use crate::element::Real;
use std::sync::OnceLock;

pub(crate) mod interleave;
pub(crate) mod panel_gemm;
mod portable;
pub(crate) use interleave::{interleave, interleave_as, Interleave, InterleaveFn};
pub(crate) mod stream;
pub(crate) use panel_gemm::{PanelGemm, PanelGemmFn};
pub(crate) use portable::point_grads;
#[cfg(target_arch = "x86_64")]
use portable::{avx2_gather_points, avx2_tap_grads};
use portable::{panel_gemm_for, portable};
pub(crate) use stream::StreamFn;

/// A test's random numbers: seeded from `DEFORM_SEED` when set, else at random, the seed printed
/// with the test's name so that a failure can be replayed.
#[cfg(test)]
pub(crate) fn test_rng(test: &str) -> rand::rngs::StdRng {
    use rand::{Rng, SeedableRng};
    let seed = std::env::var("DEFORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    eprintln!("{test}: DEFORM_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// What the kernels' tests fill the values a kernel must not write with (a NaN whose bits a
/// kernel's result cannot have by accident).
#[cfg(test)]
pub(crate) const TEST_POISON: u32 = 0x7fc0_dead;

/// How many elements ahead the point core's position reads ask for an element's runs.
pub(crate) const PREFETCH_AHEAD: usize = 8;
/// Elements ahead of the one being summed whose `lead` pixel the one-pass forward asks for.
const LEAD_AHEAD: usize = 16;

/// Are indices below `values` exact in f32 (every integer below 2^24 is)? The descriptor
/// kernels then form their corner indices with FMAs (`SMALL` in `corners16` and `corners8`).
pub(crate) fn indices_exact_in_f32(values: usize) -> bool {
    values < 1 << 24
}

/// Asks the caches for the lines of `data` ahead of its use: a hint, no effect on any result
/// (a no-op off x86-64 and under Miri). For streams the hardware prefetchers miss, such as
/// one output pixel's offsets and masks read a few pixels before their turn.
#[inline(always)]
pub(crate) fn prefetch<T>(data: &[T]) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = data.as_ptr().cast::<i8>();
        for at in (0..std::mem::size_of_val(data)).step_by(64) {
            // SAFETY: `p + at` is inside `data` (so `add` stays in the allocation); a prefetch
            // only hints the cache: it never faults and changes no memory (SSE, in the x86-64
            // baseline).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(at)) };
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = data;
}

/// An instruction set the engine can run its kernels with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable code, no target features beyond the build's baseline.
    Scalar,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512F (with AVX2 + FMA, whose kernels it keeps where they measured faster).
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
            Isa::Avx512 => is_x86_feature_detected!("avx512f") && Isa::Avx2.supported(),
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

/// One row's channel work: pixel `t` of the row reads the channel run `[lo, lo + len)` of the
/// corner pixels `s.idx[j][t]` (row length `c` in the channels-last image) and meets row
/// `t * stride` of the columns tile.
pub(crate) struct RowJob<'a, A> {
    pub s: &'a RowSamples<A>,
    /// Pixels in the row.
    pub n: usize,
    /// Channels per image pixel (`C`).
    pub c: usize,
    /// First channel of the run.
    pub lo: usize,
    /// Channels in the run.
    pub len: usize,
    /// Columns-tile elements between consecutive pixels.
    pub stride: usize,
}

impl<A> RowJob<'_, A> {
    /// A backward row's base pointers `(xt, dcol, cols, dx)`, once checked that its runs lie in
    /// their slices (`dx` and `cols` empty: not used): the run of the largest corner index `top`
    /// in `xt` (and `dx`), the last pixel's in `dcol` (and `cols`). The explicit backward rows
    /// check this once before their unsafe loops; a failure is a bug in the engine (a panic).
    pub(crate) fn backward_ptrs(
        &self,
        top: usize,
        xt: &[A],
        dcol: &[A],
        cols: &mut [A],
        dx: &mut [A],
    ) -> (*const A, *const A, *mut A, *mut A) {
        let corner = top * self.c + self.lo + self.len;
        let last = (self.n.max(1) - 1) * self.stride + self.len;
        assert!(
            corner <= xt.len()
                && (dx.is_empty() || corner <= dx.len())
                && last <= dcol.len()
                && (cols.is_empty() || last <= cols.len()),
            "descriptor runs lie inside the image, dX, dcol and the columns tile"
        );
        (
            xt.as_ptr(),
            dcol.as_ptr(),
            cols.as_mut_ptr(),
            dx.as_mut_ptr(),
        )
    }
}

/// Descriptors of one row.
pub(crate) type SampleRowFn<A> = fn(&RowArgs<'_, A>, &mut RowSamples<A>);
/// `(src, row_stride, w, k, dst)`: see `pack::transpose_rows`.
pub(crate) type TransposeRowsFn<A> = fn(&[A], usize, usize, usize, &mut [A]);
/// `cols[t*stride + c'] = sum_j w_j[t] * X[idx_j[t], lo + c']`.
pub(crate) type GatherRowFn<A> = fn(&RowJob<'_, A>, &[A], &mut [A]);
/// `(job, points, xt, cols)`: the point core's forward row, `cols[t*stride + c'] = sum_k
/// gather_k(t, c')` over `k < points` in order (the first stored, the others added), each
/// sample's corners fused (`fma(w3, s3, fma(w2, s2, fma(w1, s1, w0*s0)))`, where `GatherRowFn`
/// rounds each product and sum), point `k`'s descriptors at entries `k*job.n ..` of `job.s`.
pub(crate) type GatherPointsFn<A> = fn(&RowJob<'_, A>, usize, &[A], &mut [A]);
/// `acc[4t + j] += sum_c' dcol[t*stride + c'] * X[idx_j[t], lo + c']` for gradient samples.
pub(crate) type Dot4RowFn<A> = fn(&RowJob<'_, A>, &[A], &[A], &mut [A]);
/// `dX[idx_j[t], lo + c'] += w_j[t] * dcol[t*stride + c']` for open samples.
pub(crate) type ScatterRowFn<A> = fn(&RowJob<'_, A>, &[A], &mut [A]);
/// The backward's row in one pass, `(job, dcol, xt, cols, acc, dx)`: when `cols` is not empty
/// the gather for open samples (+0 for the others), the `Dot4RowFn` sums and, when `dx` is not
/// empty, the `ScatterRowFn` scatter; bitwise as the three kernels.
pub(crate) type BackwardRowFn<A> = fn(&RowJob<'_, A>, &[A], &[A], &mut [A], &mut [A], &mut [A]);

/// Each element's points as runs of the operator's own tensors, for [`DescribePointsFn`]: element
/// `t`'s `(x, y)` pairs at `pairs[pair0 + t*pair_step ..][..2*points]` and its weights at
/// `weights[weight0 + t*weight_step ..][..points]`; per point `tap` and `scale` (`[y, x]`), per
/// element `base` (`[y, x]`).
pub(crate) struct PointRuns<'a, E, A> {
    pub pairs: &'a [E],
    pub pair0: usize,
    pub pair_step: usize,
    pub weights: &'a [E],
    pub weight0: usize,
    pub weight_step: usize,
    pub points: usize,
    pub len: usize,
    pub tap: [&'a [A]; 2],
    pub scale: [&'a [A]; 2],
    pub base: [&'a [A]; 2],
}

/// `(runs, y, x, m)`: point `k` of element `t` at entry `k*len + t` of each output: `y =
/// base_y[t] + (tap_y[k] + pair_y) * scale_y[k]`, `x` likewise, `m` the weight (a transpose of the
/// operator's element-major runs into the point-major rows `sample_row` reads). `None` in a
/// table: the operator's own loop.
pub(crate) type DescribePointsFn<A> = fn(&PointRuns<'_, A, A>, &mut [A], &mut [A], &mut [A]);

/// One row of the point core's forward straight from the operator's tensors: for each element
/// `t` of `runs` and each group (its runs at `[pair0, weight0]` instead of `runs`' own, its
/// channels from `lo`: `groups` holds `[pair0, weight0, lo]`), `out[t*c + lo ..][..d] = sum_k
/// m_k * bilinear_k` over the group's points in order, the positions and weights as
/// [`DescribePointsFn`] forms them, the descriptors as
/// `sample_row` forms them (absolute positions), each sample's corners combined as
/// `gather_points` does: the bits of the three passes. Point `k` samples the plane `planes[k] =
/// [h, w, first pixel]` of the channels-last `image` (`c` values a pixel) in place; a corner
/// outside its plane reads zeros. `block` groups at a time (at most 8): block by block, element
/// by element within a block.
pub(crate) struct PointsRow<'a, A> {
    pub runs: PointRuns<'a, A, A>,
    pub groups: &'a [[usize; 3]],
    pub planes: &'a [[usize; 3]],
    pub image: &'a [A],
    pub c: usize,
    pub d: usize,
    pub block: usize,
    /// `[rows, columns]` from each element's base (its `base` pixel, truncated) to the pixel
    /// whose channels [`Self::prefetch_ahead`] asks for: the input rows the rows of elements
    /// after this one reach first (`None`: no such pixel).
    pub lead: Option<[i32; 2]>,
}

impl<A: Real> PointsRow<'_, A> {
    /// Does every run a one-pass forward kernel for groups of `d` channels reads or writes lie
    /// inside its slice (`out`: the output row's length), with at most 16 points, an image
    /// below 2^31 values, and each point's plane inside the image?
    pub(crate) fn inside(&self, d: usize, out: usize) -> bool {
        let runs = &self.runs;
        let (p, len, c) = (runs.points, runs.len, self.c);
        let last = len.saturating_sub(1);
        let pixels = self.image.len() / c.max(1);
        (1..=16).contains(&p)
            && self.d == d
            && self.image.len() < i32::MAX as usize
            && self.groups.iter().all(|&[pair0, weight0, lo]| {
                lo + d <= c
                    && last * c + lo + d <= out
                    && pair0 + last * runs.pair_step + 2 * p <= runs.pairs.len()
                    && weight0 + last * runs.weight_step + p <= runs.weights.len()
            })
            && runs.tap.iter().chain(&runs.scale).all(|v| v.len() >= p)
            && runs.base.iter().all(|v| v.len() >= len)
            && self.planes.len() >= p
            && planes_inside(&self.planes[..p], pixels)
    }

    /// The channels of element `e`'s `lead` pixel, where it has one inside the first plane.
    #[inline]
    fn lead_pixel(&self, e: usize) -> Option<&[A]> {
        let [ry, rx] = self.lead?;
        let (by, bx) = (self.runs.base[0].get(e)?, self.runs.base[1].get(e)?);
        let &[h, w, s] = self.planes.first()?;
        let y = usize::try_from(by.to_i32_sat().saturating_add(ry)).ok()?;
        let x = usize::try_from(bx.to_i32_sat().saturating_add(rx)).ok()?;
        if y >= h || x >= w {
            return None;
        }
        let at = (s + y * w + x) * self.c;
        self.image.get(at..at + self.c)
    }

    /// Asks for the runs of element `t + PREFETCH_AHEAD` of the groups `gs` and, with the first
    /// groups, for the pixel `lead` from element `t + LEAD_AHEAD` (hints).
    #[inline(always)]
    pub(crate) fn prefetch_ahead(&self, t: usize, gs: &[[usize; 3]]) {
        let runs = &self.runs;
        let (a, p) = (t + PREFETCH_AHEAD, runs.points);
        if a < runs.len {
            for &[pair0, weight0, _] in gs {
                prefetch(&runs.pairs[pair0 + a * runs.pair_step..][..2 * p]);
                prefetch(&runs.weights[weight0 + a * runs.weight_step..][..p]);
            }
        }
        if std::ptr::eq(gs.as_ptr(), self.groups.as_ptr()) {
            if let Some(px) = self.lead_pixel(t + LEAD_AHEAD) {
                prefetch(px);
            }
        }
    }
}

/// One (element, group)'s descriptors in the one-pass forward kernels: per corner, its points'
/// element offsets (-1: outside the plane) and weights.
pub(crate) type PointTile = ([[i32; 16]; 4], [[f32; 16]; 4]);

/// Groups per unit of the one-pass forward kernels, at most.
const UNIT_GROUPS: usize = 8;

/// The one-pass forward kernels' order over a row: units of `block` groups (at most
/// [`UNIT_GROUPS`]) of one element, block by block, element by element; `ahead(t, groups)` as a
/// unit starts, and each unit's descriptors (`describe(t, group, tile)`) formed before the
/// previous unit's gather (`gather(t, lo, tile)`): its loads wait on no address computed just
/// before them.
#[inline(always)]
pub(crate) fn unit_pipeline(
    (len, groups, block): (usize, &[[usize; 3]], usize),
    mut ahead: impl FnMut(usize, &[[usize; 3]]),
    mut describe: impl FnMut(usize, [usize; 3], &mut PointTile),
    mut gather: impl FnMut(usize, usize, &PointTile),
) {
    if len == 0 || groups.is_empty() {
        return;
    }
    let per_block = block.clamp(1, UNIT_GROUPS);
    let unit = |b: usize| &groups[b * per_block..((b + 1) * per_block).min(groups.len())];
    let blocks = groups.len().div_ceil(per_block);
    let mut tiles = [[([[0i32; 16]; 4], [[0f32; 16]; 4]); UNIT_GROUPS]; 2];
    for (g, tile) in unit(0).iter().zip(&mut tiles[0]) {
        describe(0, *g, tile);
    }
    let mut odd = false;
    for b in 0..blocks {
        let gs = unit(b);
        for t in 0..len {
            ahead(t, gs);
            let [x, y] = &mut tiles;
            let (cur, next) = if odd { (y, x) } else { (x, y) };
            odd = !odd;
            let following = if t + 1 < len {
                Some((t + 1, gs))
            } else {
                (b + 1 < blocks).then(|| (0, unit(b + 1)))
            };
            if let Some((tn, gn)) = following {
                for (g, tile) in gn.iter().zip(next.iter_mut()) {
                    describe(tn, *g, tile);
                }
            }
            for (g, tile) in gs.iter().zip(cur.iter()) {
                gather(t, g[2], tile);
            }
        }
    }
}

/// Elements per block of the point core's backward order: block by block, in each every point in
/// order, for each the block's elements in order. That is the order in which an input-gradient
/// element receives its terms, the same in every table and route (the same bits); a block's
/// corners stay in L1 while its points revisit them (point by point across a whole row they did
/// not: 0.90x on DCNv3 stage 1's backward).
pub(crate) const BACK_BLOCK: usize = 16;

/// One (row, group) of the point core's backward straight from the image: in the order of
/// [`BACK_BLOCK`] (blocks of elements `t`, in each every point `k`), the descriptors of `y`, `x`,
/// `m` at `k*len + t` (as `describe` leaves them) as `sample_row` forms them with gradient
/// fields, the four dot products of `dout`'s run (element `t`'s at `t*c + lo`) with the corners'
/// runs of the `image` (`c` values a pixel, in place; zeros outside) as `backward_row` forms
/// them, `dx[corner] += w * dout` for open samples' corners inside the image (`dx` laid out as
/// `image`), and the position and weight gradients into `grads` (`[y, x, m]`, at `k*len + t`) as
/// the point core forms them: the bits of those passes. Point `k` samples the plane `planes[k] =
/// [h, w, first pixel]`.
pub(crate) struct PointsBack<'a, A> {
    pub y: &'a [A],
    pub x: &'a [A],
    pub m: &'a [A],
    pub len: usize,
    pub planes: &'a [[usize; 3]],
    pub image: &'a [A],
    pub dout: &'a [A],
    pub c: usize,
    pub lo: usize,
    pub d: usize,
}

impl<A> PointsBack<'_, A> {
    /// Does every run a one-pass backward kernel for groups of `d` channels reads or writes lie
    /// inside its slice (`dx` laid out as the image, each of `grads` a row of every point), with
    /// an image below 2^31 values and each point's plane inside the image?
    pub(crate) fn inside(&self, d: usize, dx: &[A], grads: &[&mut [A]; 3]) -> bool {
        let (len, c, lo) = (self.len, self.c, self.lo);
        let all = self.planes.len() * len;
        self.d == d
            && lo + d <= c
            && self.image.len() < i32::MAX as usize
            && dx.len() == self.image.len()
            && len.saturating_sub(1) * c + lo + d <= self.dout.len()
            && [self.y, self.x, self.m].iter().all(|v| v.len() >= all)
            && grads.iter().all(|v| v.len() >= all)
            && planes_inside(self.planes, self.image.len() / c.max(1))
    }
}

/// Does each plane `[h, w, first pixel]` end within an image of `pixels` pixels?
fn planes_inside(planes: &[[usize; 3]], pixels: usize) -> bool {
    planes
        .iter()
        .all(|&[h, w, s]| h.checked_mul(w).and_then(|hw| hw.checked_add(s)) <= Some(pixels))
}

/// The point core's one-pass rows of a table ([`PointsRow`], [`PointsBack`]) and the shapes
/// they take: `fits(d, points, image)` for `d` channels a group, `points` points, an image of
/// `image` values.
pub(crate) struct PointKernels<A> {
    pub fits: fn(usize, usize, usize) -> bool,
    pub forward: fn(&PointsRow<'_, A>, &mut [std::mem::MaybeUninit<A>]),
    /// `None`: the backward's copy and row kernels.
    pub backward: Option<PointsBackFn<A>>,
}

/// `(s, a, [gy, gx, gm])`: the offset and mask gradients of one (row, deformable group, tap),
/// `wo` elements (the outputs' length), from the descriptors `s` and the four sums of each element
/// (`a[4t + j]`), as SPEC §2 writes them; zero where a sample receives none (`s.grad`, and
/// `s.open` for the mask's).
pub(crate) type TapGradsFn<A> = fn(&RowSamples<A>, &[A], [&mut [A]; 3]);

/// `(row, dx, [gy, gx, gm])`: see [`PointsBack`].
pub(crate) type PointsBackFn<A> = fn(&PointsBack<'_, A>, &mut [A], [&mut [A]; 3]);

/// The kernels of one instruction set for accumulation type `A`.
pub(crate) struct Kernels<A> {
    /// What runs: `"avx512 (avx2 f32 kernels, zmm panel GEMM)"`, `"avx2 (generic bodies)"`, ...
    pub name: &'static str,
    pub sample_row: SampleRowFn<A>,
    pub gather_row: GatherRowFn<A>,
    pub gather_points: GatherPointsFn<A>,
    pub dot4_row: Dot4RowFn<A>,
    pub scatter_row: ScatterRowFn<A>,
    pub tap_grads: TapGradsFn<A>,
    /// The backward's gather, dot products and scatter fused, where written (AVX2 f32); `None`:
    /// the engine calls `gather_row`, `dot4_row` and `scatter_row` in turn.
    pub backward_row: Option<BackwardRowFn<A>>,
    /// The forward's GEMM on the columns tile in place and the weight in panels (f32, where the
    /// CPU has fused multiply-add); `None`: the `gemm` crate on the packed rows.
    pub panel_gemm: Option<PanelGemmFn<A>>,
    /// The point core's positions from runs (AVX-512 f32); `None`: `points::describe_runs`.
    pub describe_points: Option<DescribePointsFn<A>>,
    /// The NCHW image to channels-last copy in registers (AVX2 f32); `None`: `pack::transpose_rows`
    /// element by element.
    pub transpose_rows: Option<TransposeRowsFn<A>>,
    /// The point core's forward and backward rows in one pass, reading the image in place
    /// (f32: AVX2 groups of 8, 16 and 32 channels, AVX-512 of 16 and 32); `None`: the image
    /// copy and the row kernels.
    pub points: Option<PointKernels<A>>,
    /// Point-major gradients into element-major rows through register transposes (AVX2 and
    /// AVX-512 f32); `None`: [`interleave`], value by value.
    pub interleave: Option<InterleaveFn<A>>,
    /// A staged row into its tensor row with non-temporal stores (AVX2 and AVX-512 f32); `None`:
    /// no staging (the rows written in place).
    pub stream: Option<StreamFn<A>>,
}

#[cfg(target_arch = "x86_64")]
mod avx2_f32;
#[cfg(target_arch = "x86_64")]
mod avx2_sample;
#[cfg(target_arch = "x86_64")]
mod avx512_f32;
#[cfg(target_arch = "x86_64")]
mod avx512_sample;

/// The f32 table of `isa`: the portable one, with what each instruction set implements
/// explicitly (and measured faster) in its place.
fn f32_table(isa: Isa) -> Option<Kernels<f32>> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(avx2_f32_table()),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(avx512_f32_table()),
        _ => portable::<f32>(isa),
    }
}

/// The explicit AVX2 f32 kernels over the portable AVX2 table: descriptors, gather, dot
/// products, scatter and the fused backward row.
#[cfg(target_arch = "x86_64")]
fn avx2_f32_table() -> Kernels<f32> {
    fn sample_row(a: &RowArgs<'_, f32>, out: &mut RowSamples<f32>) {
        // SAFETY: this table is only built after `Isa::Avx2.supported()` (AVX2 and FMA) returned
        // true.
        unsafe { avx2_sample::sample_row(a, out) }
    }
    fn gather_row(job: &RowJob<'_, f32>, xt: &[f32], cols: &mut [f32]) {
        // SAFETY: as for `sample_row`; the bodies compiled for a run length get exactly it.
        unsafe {
            match job.len {
                8 => avx2_f32::gather_row::<8>(job, xt, cols),
                16 => avx2_f32::gather_row::<16>(job, xt, cols),
                32 => avx2_f32::gather_row::<32>(job, xt, cols),
                _ => avx2_f32::gather_row::<0>(job, xt, cols),
            }
        }
    }
    fn dot4_row(job: &RowJob<'_, f32>, dcol: &[f32], xt: &[f32], acc: &mut [f32]) {
        // SAFETY: as for `sample_row`.
        unsafe { avx2_f32::dot4_row(job, dcol, xt, acc) }
    }
    fn scatter_row(job: &RowJob<'_, f32>, dcol: &[f32], dx: &mut [f32]) {
        // SAFETY: as for `sample_row`.
        unsafe { avx2_f32::scatter_row(job, dcol, dx) }
    }
    fn backward_row(
        job: &RowJob<'_, f32>,
        dcol: &[f32],
        xt: &[f32],
        cols: &mut [f32],
        acc: &mut [f32],
        dx: &mut [f32],
    ) {
        // SAFETY: as for `gather_row`.
        unsafe {
            match job.len {
                8 => avx2_f32::backward_row::<8>(job, dcol, xt, cols, acc, dx),
                16 => avx2_f32::backward_row::<16>(job, dcol, xt, cols, acc, dx),
                32 => avx2_f32::backward_row::<32>(job, dcol, xt, cols, acc, dx),
                _ => avx2_f32::backward_row::<0>(job, dcol, xt, cols, acc, dx),
            }
        }
    }
    fn transpose_rows(src: &[f32], row_stride: usize, w: usize, k: usize, dst: &mut [f32]) {
        // SAFETY: as for `sample_row`.
        unsafe { avx2_f32::transpose_rows(src, row_stride, w, k, dst) }
    }
    fn interleave(job: &Interleave<'_, f32>, dst: &mut [std::mem::MaybeUninit<f32>]) {
        // SAFETY: as for `sample_row`.
        unsafe { avx2_f32::interleave(job, dst) }
    }
    unsafe fn stream(src: &[std::mem::MaybeUninit<f32>], dst: &mut [std::mem::MaybeUninit<f32>]) {
        // SAFETY: as for `sample_row`; the caller initialised `src` (the contract).
        unsafe { avx2_f32::stream(src, dst) }
    }
    fn avx2_points_fits(d: usize, points: usize, image: usize) -> bool {
        matches!(d, 8 | 16 | 32) && (1..=16).contains(&points) && image < i32::MAX as usize
    }
    fn avx2_points_backward(r: &PointsBack<'_, f32>, dx: &mut [f32], grads: [&mut [f32]; 3]) {
        // SAFETY: as for `sample_row`; the kernel gets the run lengths it is written for
        // (`avx2_points_fits`, checked again inside).
        unsafe {
            match r.d {
                8 => avx2_f32::points_back::<1>(r, dx, grads),
                16 => avx2_f32::points_back::<2>(r, dx, grads),
                _ => avx2_f32::points_back::<4>(r, dx, grads),
            }
        }
    }
    fn avx2_points_forward(r: &PointsRow<'_, f32>, out: &mut [std::mem::MaybeUninit<f32>]) {
        // SAFETY: as for `sample_row`; the kernel gets the run lengths it is written for
        // (`avx2_points_fits`, checked again inside).
        unsafe {
            match r.d {
                8 => avx2_sample::points_row::<1>(r, out),
                16 => avx2_sample::points_row::<2>(r, out),
                _ => avx2_sample::points_row::<4>(r, out),
            }
        }
    }
    Kernels {
        name: "avx2 (explicit f32 kernels)",
        sample_row,
        gather_row,
        gather_points: avx2_gather_points,
        dot4_row,
        scatter_row,
        tap_grads: avx2_tap_grads,
        backward_row: Some(backward_row),
        panel_gemm: panel_gemm_for(Isa::Avx2),
        describe_points: None,
        transpose_rows: Some(transpose_rows),
        interleave: Some(interleave),
        stream: Some(stream),
        // The forward and backward in one pass, explicit (the portable one-pass rows compiled
        // for AVX2 measured slower than the copy and row kernels: forward 1.04x, backward 1.3x).
        points: Some(PointKernels {
            fits: avx2_points_fits,
            forward: avx2_points_forward,
            backward: Some(avx2_points_backward),
        }),
    }
}

/// The AVX-512 f32 table: the AVX2 table with what measured faster on AVX-512: the forwards' row
/// descriptors sixteen at a time, the forward's panel GEMM on a zmm register tile, and the point
/// core's forward and backward rows of 16 and 32 channels (BENCHMARKS.md).
#[cfg(target_arch = "x86_64")]
fn avx512_f32_table() -> Kernels<f32> {
    fn panel_gemm(job: PanelGemm<'_, f32>) {
        // SAFETY: this table is only built after `Isa::Avx512.supported()` returned true.
        unsafe { avx512_f32::panel_gemm::<14>(job) }
    }
    fn backward_row(
        job: &RowJob<'_, f32>,
        dcol: &[f32],
        xt: &[f32],
        cols: &mut [f32],
        acc: &mut [f32],
        dx: &mut [f32],
    ) {
        // SAFETY: this table is only built after `Isa::Avx512.supported()` returned true (which
        // includes AVX2); the zmm rows get run lengths of a multiple of 16.
        unsafe {
            match job.len {
                16 => avx512_f32::backward_row::<1>(job, dcol, xt, cols, acc, dx),
                32 => avx512_f32::backward_row::<2>(job, dcol, xt, cols, acc, dx),
                l if l % 16 == 0 => avx512_f32::backward_row::<0>(job, dcol, xt, cols, acc, dx),
                8 => avx2_f32::backward_row::<8>(job, dcol, xt, cols, acc, dx),
                _ => avx2_f32::backward_row::<0>(job, dcol, xt, cols, acc, dx),
            }
        }
    }
    fn gather_row(job: &RowJob<'_, f32>, xt: &[f32], cols: &mut [f32]) {
        // SAFETY: this table is only built after `Isa::Avx512.supported()` returned true (which
        // includes AVX2); the zmm rows and the fixed body get exactly their run length.
        unsafe {
            match job.len {
                16 => avx512_f32::gather_points::<1, false>(job, 1, xt, cols),
                32 => avx512_f32::gather_points::<2, false>(job, 1, xt, cols),
                8 => avx2_f32::gather_row::<8>(job, xt, cols),
                _ => avx2_f32::gather_row::<0>(job, xt, cols),
            }
        }
    }
    fn sample_row(a: &RowArgs<'_, f32>, out: &mut RowSamples<f32>) {
        // SAFETY: this table is only built after `Isa::Avx512.supported()` returned true (which
        // includes AVX2).
        unsafe { avx512_sample::sample_row(a, out) }
    }
    fn gather_points(job: &RowJob<'_, f32>, points: usize, xt: &[f32], cols: &mut [f32]) {
        // SAFETY: as for `gather_row`.
        unsafe {
            match job.len {
                16 => avx512_f32::gather_points::<1, true>(job, points, xt, cols),
                32 => avx512_f32::gather_points::<2, true>(job, points, xt, cols),
                _ => avx2_gather_points(job, points, xt, cols),
            }
        }
    }
    fn describe_points(r: &PointRuns<'_, f32, f32>, y: &mut [f32], x: &mut [f32], m: &mut [f32]) {
        // SAFETY: this table is only built after `Isa::Avx512.supported()` returned true.
        unsafe { avx512_sample::describe_points(r, y, x, m) }
    }
    fn points_fits(d: usize, points: usize, image: usize) -> bool {
        matches!(d, 16 | 32) && (1..=16).contains(&points) && image < i32::MAX as usize
    }
    fn points_forward(r: &PointsRow<'_, f32>, out: &mut [std::mem::MaybeUninit<f32>]) {
        // SAFETY: this table is only built after `Isa::Avx512.supported()` returned true; the
        // kernel gets the run lengths it is written for (`points_fits`, checked again inside).
        unsafe {
            match r.d {
                16 => avx512_sample::points_row::<1>(r, out),
                _ => avx512_sample::points_row::<2>(r, out),
            }
        }
    }
    fn points_backward(r: &PointsBack<'_, f32>, dx: &mut [f32], grads: [&mut [f32]; 3]) {
        // SAFETY: as for `points_forward` (the CPU has AVX2 too).
        unsafe {
            match r.d {
                16 => avx512_f32::points_back::<1>(r, dx, grads),
                _ => avx512_f32::points_back::<2>(r, dx, grads),
            }
        }
    }
    fn interleave(job: &Interleave<'_, f32>, dst: &mut [std::mem::MaybeUninit<f32>]) {
        // SAFETY: this table is only built after `Isa::Avx512.supported()` returned true.
        unsafe { avx512_f32::interleave(job, dst) }
    }
    unsafe fn stream(src: &[std::mem::MaybeUninit<f32>], dst: &mut [std::mem::MaybeUninit<f32>]) {
        // SAFETY: this table is only built after `Isa::Avx512.supported()` returned true; the
        // caller initialised `src` (the contract).
        unsafe { avx512_f32::stream(src, dst) }
    }
    Kernels {
        name: "avx512 (avx2 f32 kernels, zmm panel GEMM, descriptors and point rows)",
        panel_gemm: Some(panel_gemm),
        interleave: Some(interleave),
        stream: Some(stream),
        describe_points: Some(describe_points),
        points: Some(PointKernels {
            fits: points_fits,
            forward: points_forward,
            backward: Some(points_backward),
        }),
        backward_row: Some(backward_row),
        sample_row,
        gather_row,
        gather_points,
        ..avx2_f32_table()
    }
}

/// The tables of one accumulation type, one per [`Isa::ALL`] entry (`None`: not supported).
type Tables<A> = [Option<Kernels<A>>; 3];

fn tables<A: Real>(build: impl Fn(Isa) -> Option<Kernels<A>>) -> Tables<A> {
    Isa::ALL.map(|isa| if isa.supported() { build(isa) } else { None })
}

/// What the engine runs for accumulation type `A` on `isa` (`None`: not supported here).
pub fn kernels_name<A: Real>(isa: Isa) -> Option<&'static str> {
    table::<A>(isa).map(|k| k.name)
}

/// The kernel table of `isa` for accumulation type `A` (f32 or f64), built once per process;
/// `None` when this CPU does not support `isa`.
pub(crate) fn table<A: Real>(isa: Isa) -> Option<&'static Kernels<A>> {
    static F32: OnceLock<Tables<f32>> = OnceLock::new();
    static F64: OnceLock<Tables<f64>> = OnceLock::new();
    let at = Isa::ALL.iter().position(|&i| i == isa)?;
    let any: &'static dyn std::any::Any =
        if std::any::TypeId::of::<A>() == std::any::TypeId::of::<f32>() {
            &F32.get_or_init(|| tables(f32_table))[at]
        } else {
            &F64.get_or_init(|| tables(portable::<f64>))[at]
        };
    any.downcast_ref::<Option<Kernels<A>>>()?.as_ref()
}
