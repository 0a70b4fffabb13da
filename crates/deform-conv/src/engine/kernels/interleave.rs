//! A row's point-major values into element-major rows ([`Interleave`]): the point core's
//! position and weight gradients (`[point][element]`, as its kernels make them) into the
//! tensors' rows (`[element][point]`). The portable body goes value by value; the explicit ones
//! share [`blocks`], a register width's transposes given by [`Lanes`].

use crate::element::Real;
use std::mem::MaybeUninit;

/// A row's point-major values (the point core's gradients, value `p` of element `t` at
/// `p * len + t` in each source) into element-major rows (the tensors' layout):
/// `dst[t * stride + r] = src[j][p * len + t]` with `r = p * q + j`, times `factors[r]` when
/// given, for `t < len`, `p < points` and `j < q = src.len()`; nothing else of `dst` is written.
pub(crate) struct Interleave<'a, A> {
    pub src: &'a [&'a [A]],
    pub points: usize,
    pub len: usize,
    pub factors: Option<&'a [A]>,
    pub stride: usize,
}

impl<A> Interleave<'_, A> {
    /// Values per element (`points * q`) when every source holds what the interleave reads,
    /// `dst` (of `dst_len` values) what it writes, and element rows do not overlap.
    fn fits(&self, dst_len: usize) -> Option<usize> {
        let row = self.points.checked_mul(self.src.len())?;
        let reads = self.points.checked_mul(self.len)?;
        let writes = match self.len {
            0 => 0,
            n => (n - 1).checked_mul(self.stride)?.checked_add(row)?,
        };
        let apart = self.len <= 1 || row <= self.stride;
        let inside = self.src.iter().all(|s| s.len() >= reads)
            && self.factors.is_none_or(|f| f.len() >= row)
            && writes <= dst_len;
        (apart && inside).then_some(row)
    }
}

/// See [`Interleave`].
pub(crate) type InterleaveFn<A> = fn(&Interleave<'_, A>, &mut [MaybeUninit<A>]);

/// [`Interleave`] value by value: the portable body, and the oracle of the explicit ones.
pub(crate) fn interleave<A: Real>(job: &Interleave<'_, A>, dst: &mut [MaybeUninit<A>]) {
    interleave_as(job, dst, |v| v)
}

/// [`interleave`] into rows of another type, each value converted once by `to` (a storage
/// type narrower than the accumulation type).
pub(crate) fn interleave_as<A: Real, O>(
    job: &Interleave<'_, A>,
    dst: &mut [MaybeUninit<O>],
    to: impl Fn(A) -> O,
) {
    let q = job.src.len();
    let row = job
        .fits(dst.len())
        .expect("interleave: sources and rows inside their slices");
    for t in 0..job.len {
        let out = &mut dst[t * job.stride..][..row];
        for (r, v) in out.iter_mut().enumerate() {
            let x = job.src[r % q][r / q * job.len + t];
            v.write(to(job.factors.map_or(x, |f| x * f[r])));
        }
    }
}

/// One register width of `N` f32 lanes, for [`blocks`] and [`super::stream::rows`].
pub(crate) trait Lanes<const N: usize> {
    type V: Copy;
    /// Safety: the CPU runs the width's instructions (so for every method).
    unsafe fn zero() -> Self::V;
    /// The first `n` (`<= N`) values at `p`, zero in the other lanes.
    ///
    /// # Safety
    /// `n` values are readable at `p`; the other lanes are not accessed.
    unsafe fn load(p: *const f32, n: usize) -> Self::V;
    /// Safety: as [`Lanes::zero`].
    unsafe fn mul(v: Self::V, f: f32) -> Self::V;
    /// `N` rows of `N` lanes transposed: moves only. Safety: as [`Lanes::zero`].
    unsafe fn transpose(rows: [Self::V; N]) -> [Self::V; N];
    /// The first `n` lanes of `v` to `p`.
    ///
    /// # Safety
    /// `n` values are writable at `p`; nothing else is written.
    unsafe fn store(p: *mut f32, v: Self::V, n: usize);
    /// `v` to `p` past the caches (a non-temporal store).
    ///
    /// # Safety
    /// `N` values are writable at `p`, which is aligned to `4 * N` bytes.
    unsafe fn stream(p: *mut f32, v: Self::V);
    /// Orders the non-temporal stores before every later store. Safety: as [`Lanes::zero`].
    unsafe fn fence();
}

/// [`Interleave`] `N` elements at a time: each block of up to `N` of an element's values loaded
/// as `N` rows (value `r` of the block's elements), multiplied by its factor (the portable
/// body's one multiply), transposed, and each element's run stored: the same values as
/// [`interleave`].
///
/// # Safety
/// The CPU runs `L`'s instructions.
#[inline(always)]
pub(crate) unsafe fn blocks<const N: usize, L: Lanes<N>>(
    job: &Interleave<'_, f32>,
    dst: &mut [MaybeUninit<f32>],
) {
    let (q, len, stride) = (job.src.len(), job.len, job.stride);
    let row = job
        .fits(dst.len())
        .expect("interleave: sources and rows inside their slices");
    let out = dst.as_mut_ptr().cast::<f32>();
    for t0 in (0..len).step_by(N) {
        let nt = N.min(len - t0);
        for r0 in (0..row).step_by(N) {
            let nr = N.min(row - r0);
            let rows: [L::V; N] = std::array::from_fn(|i| {
                if i >= nr {
                    // SAFETY: the caller's contract.
                    return unsafe { L::zero() };
                }
                let (p, j) = ((r0 + i) / q, (r0 + i) % q);
                // SAFETY: value p < points of elements t0 .. t0 + nt <= len lies inside src[j]
                // (`fits`); the CPU runs `L` (the caller's contract).
                unsafe {
                    let v = L::load(job.src[j].as_ptr().add(p * len + t0), nt);
                    job.factors.map_or(v, |f| L::mul(v, f[r0 + i]))
                }
            });
            // SAFETY: the caller's contract.
            let cols = unsafe { L::transpose(rows) };
            for (i, v) in cols.into_iter().take(nt).enumerate() {
                // SAFETY: values r0 .. r0 + nr <= row of element t0 + i < len lie inside `dst`
                // (`fits`).
                unsafe { L::store(out.add((t0 + i) * stride + r0), v, nr) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{table, test_rng, Isa, TEST_POISON};
    use super::*;
    use rand::Rng;
    use std::mem::MaybeUninit;

    /// Every table's interleave against the value-by-value body, bit for bit, on rows of 1-40
    /// elements (tails of the sixteen-element blocks), 1-16 points of one or two sources, with
    /// and without a factor, rows wider than their values; every value of `dst` the kernel must
    /// not write keeps its poison.
    #[test]
    fn every_interleave_writes_the_value_by_value_rows_and_nothing_else() {
        let mut rng = test_rng("every_interleave_writes_the_value_by_value_rows_and_nothing_else");
        let poison = f32::from_bits(TEST_POISON);
        for _ in 0..300 {
            let (len, points, q) = (
                rng.gen_range(0..41),
                rng.gen_range(1..17),
                rng.gen_range(1..3),
            );
            let row = points * q;
            let (at, stride) = (rng.gen_range(0..5), row + rng.gen_range(0..9));
            let src: Vec<Vec<f32>> = (0..q)
                .map(|_| {
                    (0..points * len)
                        .map(|_| rng.gen_range(-2.0f32..2.0))
                        .collect()
                })
                .collect();
            let refs: Vec<&[f32]> = src.iter().map(|v| v.as_slice()).collect();
            let factors: Vec<f32> = (0..row).map(|_| rng.gen_range(0.1f32..3.0)).collect();
            let job = Interleave {
                src: &refs,
                points,
                len,
                factors: rng.gen_bool(0.5).then_some(factors.as_slice()),
                stride,
            };
            let size = at + len * stride + 3;
            let run = |f: InterleaveFn<f32>| {
                let mut dst = vec![MaybeUninit::new(poison); size];
                f(&job, &mut dst[at..]);
                // SAFETY: every value was initialised (poisoned) before the kernel ran.
                dst.iter()
                    .map(|v| unsafe { v.assume_init() }.to_bits())
                    .collect::<Vec<_>>()
            };
            let want = run(interleave::<f32>);
            for t in 0..len {
                for v in 0..stride {
                    let bits = want[at + t * stride + v];
                    assert_eq!(bits == poison.to_bits(), v >= row, "element {t}, value {v}");
                }
            }
            for isa in Isa::ALL {
                if let Some(f) = table::<f32>(isa).and_then(|k| k.interleave) {
                    assert_eq!(run(f), want, "{isa:?}: {len} elements, {points}x{q} values");
                }
            }
        }
    }
}
