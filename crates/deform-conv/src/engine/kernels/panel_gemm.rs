//! The forward's f32 GEMM: `c[m x n] = a[m x k] * B`, where `a` is the columns tile exactly as
//! the sampler wrote it (row = pixel, `k` contiguous, read in place) and `B` is the weight,
//! packed once per call in panels of [`NR`] output channels: `b[(o / NR) * k*NR + kk*NR + o % NR]
//! = W[kk, o]`, zero past `n`.
//!
//! One body, `#[inline(always)]`, compiled per instruction set like the row kernels. An
//! `MR x NR` tile of `c` lives in registers while `kk` runs over a block of [`KC`] (its `MR`
//! rows of `a`, `MR * KC` values, stay in L1; the weight block in L2): per `kk`, `MR` broadcasts
//! of `a[i, kk]`, one `NR`-wide row of the panel, `MR * NR` fused multiply-adds. Every element is
//! one chain `c = fma(a[i, k-1], b[k-1, o], ... fma(a[i, 0], b[0, o], 0))` in `kk` order, whatever
//! `MR`, `KC` or the instruction set (a tile's running sums go through `c` between blocks
//! unchanged), so every instruction set gives the same bits.
//!
//! Why not `gemm` here: it packs both operands per call, which inside a forward tile is the
//! columns tile once more and the whole weight once per tile; this kernel reads the columns
//! where they are and the weight panels packed once per call.

use crate::element::Real;

/// Output channels per weight panel (two AVX2 registers, one AVX-512 register of f32).
pub(crate) const NR: usize = 16;

/// `kk` per block: `MR * KC` values of `a` (6 KB at `MR` = 6) stay in L1 while every panel's
/// block (`KC * NR`, 16 KB each) streams from L2.
const KC: usize = 256;

/// Bytes of the weight block (`kc` rows of every panel) that each sweep over the rows of `a`
/// re-reads: kept within L2 by a shorter `kc` for wide outputs.
const L2_WEIGHT_BLOCK: usize = 256 << 10;

/// One product `c = a * B` (see the module documentation).
pub(crate) struct PanelGemm<'a, A> {
    /// `a[i, kk]` at `a[i * lda + kk]`.
    pub a: &'a [A],
    pub lda: usize,
    pub m: usize,
    pub k: usize,
    /// The packed weight: `ceil(n / NR)` panels of `k * NR`.
    pub b: &'a [A],
    pub n: usize,
    /// `c[i, o]` at `c[i * ldc + o]`, with room for whole panels: `ldc >= n` rounded up to
    /// [`NR`], and `(m - 1) * ldc` plus that many elements. The padding columns are written
    /// (with the zero panels' sums).
    pub c: &'a mut [A],
    pub ldc: usize,
}

/// The kernel entry the dispatch table stores.
pub(crate) type PanelGemmFn<A> = fn(PanelGemm<'_, A>);

impl<A> PanelGemm<'_, A> {
    /// Every element the body touches lies in its slice.
    fn fits(&self) -> bool {
        let last = |rows: usize, stride: usize, width: usize| {
            (rows - 1)
                .checked_mul(stride)
                .and_then(|v| v.checked_add(width))
        };
        let np = self.n.div_ceil(NR) * NR; // <= n + 15 < usize::MAX / 2 for any slice's n
        let panels = np.checked_mul(self.k);
        self.k <= self.lda
            && np <= self.ldc
            && (self.m == 0
                || matches!(last(self.m, self.lda, self.k), Some(l) if l <= self.a.len())
                    && matches!(last(self.m, self.ldc, np), Some(l) if l <= self.c.len()))
            && matches!(panels, Some(l) if l <= self.b.len())
    }
}

/// The register tile the driver ([`body`]) calls: the portable one ([`Portable`]) or one written
/// for an instruction set's register file (`avx512_f32::Zmm`).
pub(crate) trait Tile<A> {
    /// One `MR x NR` tile: rows `a[i]` (pointers), `kc` steps of the panel block `b`, into `c`,
    /// the running sums read back first when `resume`; each element one fma chain in `kk` order.
    ///
    /// # Safety
    /// `a[i] + kk` is readable for `kk < kc`; `b + kk*NR + l` is readable for `kk < kc, l < NR`;
    /// `c + i*ldc + l` is readable and writable for `i < MR, l < NR`; the CPU runs the
    /// implementation's instructions.
    unsafe fn tile<const MR: usize>(
        kc: usize,
        a: [*const A; MR],
        b: *const A,
        c: *mut A,
        ldc: usize,
        resume: bool,
    );

    /// Two tiles side by side: panels `b[0]` and `b[1]` into `c[0]` and `c[1]`, each element the
    /// same chain as [`Self::tile`]'s. By default one tile after the other; a register file that
    /// holds both shares each broadcast of `a` between them.
    ///
    /// # Safety
    /// As for [`Self::tile`], for each of the two (panel, output) pairs.
    #[inline(always)]
    unsafe fn tile2<const MR: usize>(
        kc: usize,
        a: [*const A; MR],
        b: [*const A; 2],
        c: [*mut A; 2],
        ldc: usize,
        resume: bool,
    ) {
        for (b, c) in b.into_iter().zip(c) {
            // SAFETY: the caller's contract, for this pair.
            unsafe { Self::tile::<MR>(kc, a, b, c, ldc, resume) }
        }
    }
}

/// The tile as plain loops with fixed bounds: they unroll and the accumulators stay in registers
/// (with a run-time row or column count they went through the stack).
pub(crate) struct Portable;

impl<A: Real> Tile<A> for Portable {
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    unsafe fn tile<const MR: usize>(
        kc: usize,
        a: [*const A; MR],
        b: *const A,
        c: *mut A,
        ldc: usize,
        resume: bool,
    ) {
        let mut acc = [[A::zero(); NR]; MR];
        if resume {
            for i in 0..MR {
                for l in 0..NR {
                    // SAFETY: i < MR, l < NR (the contract).
                    acc[i][l] = unsafe { *c.add(i * ldc + l) };
                }
            }
        }
        for kk in 0..kc {
            // SAFETY: NR values at b + kk*NR (the contract).
            let bk = unsafe { &*(b.add(kk * NR) as *const [A; NR]) };
            for i in 0..MR {
                // SAFETY: kk < kc (the contract).
                let x = unsafe { *a[i].add(kk) };
                for l in 0..NR {
                    acc[i][l] = x.mul_add(bk[l], acc[i][l]);
                }
            }
        }
        for i in 0..MR {
            for l in 0..NR {
                // SAFETY: i < MR, l < NR (the contract).
                unsafe { *c.add(i * ldc + l) = acc[i][l] };
            }
        }
    }
}

/// The product, `MR` rows of `a` per tile, the last `m % MR` rows in smaller tiles. Every tile is
/// whole: `c` has room for the panels' padding columns (see [`PanelGemm::c`]), so no tile needs
/// a run-time bound (which would keep the edge tiles from vectorising).
#[inline(always)]
pub(crate) fn body<A: Real, const MR: usize>(job: PanelGemm<'_, A>) {
    // SAFETY: the portable tile runs on any CPU.
    unsafe { body_with::<A, MR, Portable>(job) }
}

/// [`body`] with the tile `K`.
///
/// # Safety
/// The CPU runs `K`'s instructions.
#[inline(always)]
pub(crate) unsafe fn body_with<A: Real, const MR: usize, K: Tile<A>>(job: PanelGemm<'_, A>) {
    assert!(job.fits(), "panel gemm: matrix outside its buffer");
    let (m, k, n, lda, ldc) = (job.m, job.k, job.n, job.lda, job.ldc);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        let np = n.div_ceil(NR) * NR;
        for i in 0..m {
            job.c[i * ldc..i * ldc + np].fill(A::zero());
        }
        return;
    }
    let (a, b, c) = (job.a.as_ptr(), job.b.as_ptr(), job.c.as_mut_ptr());
    let whole = m - m % MR;
    let panels = n.div_ceil(NR);
    // The weight block of KC rows of every panel stays in L2 (at most 256 KB).
    let kc_max = (L2_WEIGHT_BLOCK / (panels * NR * std::mem::size_of::<A>())).clamp(64, KC);
    for k0 in (0..k).step_by(kc_max) {
        let kc = kc_max.min(k - k0);
        // Where panel p's block, row i of `a` and row i, panel p of `c` start. Formed with
        // wrapping arithmetic (safe); inside their slices for p < panels and i < m (`fits`), the
        // only values the loops below pass.
        let bp = |p: usize| b.wrapping_add(p * k * NR + k0 * NR);
        let ap = |i: usize| a.wrapping_add(i * lda + k0);
        let cp = |i: usize, p: usize| c.wrapping_add(i * ldc + p * NR);
        let resume = k0 > 0;
        for i0 in (0..whole).step_by(MR) {
            // SAFETY: rows i0..i0 + MR < m, panels below `panels` (above).
            unsafe { row_panels::<A, MR, K>(kc, &ap, i0, (&bp, &cp, panels), ldc, resume) };
        }
        // The last m % MR rows in tiles of 8, 4, 2 and 1 (each below MR): one row at a time ran
        // at a third of the rate (a broadcast and two loads per two fma), and a 256-pixel tile
        // leaves 4 rows at MR = 6.
        let mut i0 = whole;
        for r in [8, 4, 2, 1] {
            if r >= MR {
                continue;
            }
            while m - i0 >= r {
                let panels = (&bp, &cp, panels);
                // SAFETY: rows i0..i0 + r < m, panels below `panels` (above).
                unsafe {
                    match r {
                        8 => row_panels::<A, 8, K>(kc, &ap, i0, panels, ldc, resume),
                        4 => row_panels::<A, 4, K>(kc, &ap, i0, panels, ldc, resume),
                        2 => row_panels::<A, 2, K>(kc, &ap, i0, panels, ldc, resume),
                        _ => row_panels::<A, 1, K>(kc, &ap, i0, panels, ldc, resume),
                    }
                }
                i0 += r;
            }
        }
    }
}

/// The `R` rows of `a` from row `i0` (`ap(i)`: where row `i`'s block starts) against every
/// panel (`bp(p)`, into `cp(i, p)`, `p < panels`), two at a time ([`Tile::tile2`]).
///
/// # Safety
/// As for [`Tile::tile`], for the rows `ap(i0) .. ap(i0 + R - 1)` and each panel.
#[inline(always)]
unsafe fn row_panels<A: Real, const R: usize, K: Tile<A>>(
    kc: usize,
    ap: &impl Fn(usize) -> *const A,
    i0: usize,
    (bp, cp, panels): (
        &impl Fn(usize) -> *const A,
        &impl Fn(usize, usize) -> *mut A,
        usize,
    ),
    ldc: usize,
    resume: bool,
) {
    let a: [*const A; R] = std::array::from_fn(|i| ap(i0 + i));
    let mut p = 0;
    while p + 1 < panels {
        let (b, c) = ([bp(p), bp(p + 1)], [cp(i0, p), cp(i0, p + 1)]);
        // SAFETY: the caller's contract, for panels p and p + 1.
        unsafe { K::tile2::<R>(kc, a, b, c, ldc, resume) };
        p += 2;
    }
    if p < panels {
        // SAFETY: the caller's contract, for panel p.
        unsafe { K::tile::<R>(kc, a, bp(p), cp(i0, p), ldc, resume) };
    }
}

/// Packs `w[o * ldw + kk]` (`n` rows of `k`) into [`NR`]-channel panels, zero past `n` (the
/// layout on plain rows; the engine packs the weight tensor itself in `plan`).
#[cfg(test)]
fn pack<A: Real>(w: &[A], ldw: usize, k: usize, n: usize, panels: &mut [A]) {
    for (p, panel) in panels
        .chunks_mut((k * NR).max(1))
        .enumerate()
        .take(n.div_ceil(NR))
    {
        panel.fill(A::zero());
        for l in 0..NR.min(n - p * NR) {
            let row = &w[(p * NR + l) * ldw..][..k];
            for (kk, v) in row.iter().enumerate() {
                panel[kk * NR + l] = *v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], lda: usize, m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for o in 0..n {
                let mut s = 0f32;
                for kk in 0..k {
                    s = a[i * lda + kk].mul_add(w[o * k + kk], s);
                }
                c[i * n + o] = s;
            }
        }
        c
    }

    /// Every tile height gives the one fma chain of the module documentation, bit for bit, on
    /// edges in every direction (`m`, `n` not multiples of the tile, `k` across blocks).
    #[test]
    fn every_tile_height_is_the_fma_chain() {
        use rand::Rng;
        let mut rng = super::super::test_rng("every_tile_height_is_the_fma_chain");
        let mut rnd = || rng.gen_range(-1.0f32..1.0);
        for &(m, k, n) in &[
            (1usize, 1usize, 1usize),
            (3, 0, 5),
            (11, 40, 20),
            (23, 70, 33),
            (13, 300, 35),
            (6, 256, 16),
            (7, 513, 17),
            (20, 5, 48),
        ] {
            let lda = k + 3;
            let a: Vec<f32> = (0..m * lda).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let mut b = vec![f32::NAN; n.div_ceil(NR) * k * NR];
            pack(&w, k, k, n, &mut b);
            let want = naive(&a, lda, m, k, &w, n);
            let np = n.next_multiple_of(NR);
            let ldc = np + 2;
            let run = |f: fn(PanelGemm<'_, f32>)| {
                let mut c = vec![f32::NAN; m * ldc];
                f(PanelGemm {
                    a: &a,
                    lda,
                    m,
                    k,
                    b: &b,
                    n,
                    c: &mut c,
                    ldc,
                });
                for i in 0..m {
                    let pad = &c[i * ldc + n..][..ldc - n];
                    assert!(
                        pad[..np - n].iter().all(|v| *v == 0.0),
                        "padding sums not zero"
                    );
                    assert!(
                        pad[np - n..].iter().all(|v| v.is_nan()),
                        "wrote past the panels"
                    );
                }
                (0..m * n)
                    .map(|x| c[(x / n) * ldc + x % n].to_bits())
                    .collect::<Vec<_>>()
            };
            let bits: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
            assert_eq!(run(body::<f32, 1>), bits, "MR 1, {m}x{k}x{n}");
            assert_eq!(run(body::<f32, 6>), bits, "MR 6, {m}x{k}x{n}");
            assert_eq!(run(body::<f32, 12>), bits, "MR 12, {m}x{k}x{n}");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512f") {
                fn zmm14(job: PanelGemm<'_, f32>) {
                    // SAFETY: the CPU supports AVX-512F (checked above).
                    unsafe { super::super::avx512_f32::panel_gemm::<14>(job) }
                }
                fn zmm12(job: PanelGemm<'_, f32>) {
                    // SAFETY: as above.
                    unsafe { super::super::avx512_f32::panel_gemm::<12>(job) }
                }
                assert_eq!(run(zmm14), bits, "zmm MR 14, {m}x{k}x{n}");
                assert_eq!(run(zmm12), bits, "zmm MR 12, {m}x{k}x{n}");
            }
        }
    }
}
